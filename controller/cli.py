"""`edgefleet`: the operator command line.

    edgefleet controller serve | migrate          run on the controller host (reads controller settings)
    edgefleet tokens create | list | revoke       operator tokens, straight in the controller database
                                                  (how the first admin token comes to exist)
    edgefleet enrollment-tokens create | list     over the API
    edgefleet devices list | show | revoke        over the API
    edgefleet models upload | list | show         over the API
    edgefleet repository init | pending | sign | import   image repository; offline release-key workflow
    edgefleet broker files                         Mosquitto password + ACL files for the enrolled fleet
    edgefleet keys ...                            trust-chain keys (controller.keys_cli)

API commands read the URL and token from --url/--token, EDGEFLEET_URL/EDGEFLEET_TOKEN, or the CLI
config file (see `controller.api_client`). Lists print a table; `--json` prints the raw answer.
"""

from __future__ import annotations

import typer

from controller import cli_fleet, cli_model, cli_rollout
from controller.cli_host import controller_app, tokens_app
from controller.cli_registry import devices_app, enrollment_app, models_app
from controller.cli_repository import broker_app, repository_app
from controller.keys_cli import app as keys_app
from controller.samples_cli import app as samples_app

app = typer.Typer(help="edgefleet operator CLI", no_args_is_help=True)
app.add_typer(keys_app, name="keys", help="Create and rotate the trust-chain signing keys.")
app.add_typer(samples_app, name="samples", help="Samples captured on devices: list, export a dataset.")
app.add_typer(controller_app, name="controller")
app.add_typer(tokens_app, name="tokens")
app.add_typer(enrollment_app, name="enrollment-tokens")
app.add_typer(devices_app, name="devices")
app.add_typer(models_app, name="models")
app.add_typer(repository_app, name="repository")
app.add_typer(broker_app, name="broker")
app.add_typer(cli_rollout.app, name="rollout")
app.add_typer(cli_model.app, name="model")
cli_fleet.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
