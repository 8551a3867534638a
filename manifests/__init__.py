"""edgefleet's signed-manifest trust chain: image repository (TUF), director assignments, device verifier.

See manifests/README.md. This package runs on devices: it must not import server-side packages.
"""
