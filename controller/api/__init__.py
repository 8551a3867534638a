"""REST API routers (`/api/v1/...`), their dependencies, the error format and pagination."""
