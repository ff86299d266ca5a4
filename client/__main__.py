"""`python -m client`: the dsync CLI, from a checkout, without installing the client."""

from .dsync_client.cli import main

raise SystemExit(main())
