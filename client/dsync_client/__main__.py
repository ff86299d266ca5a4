"""`python -m dsync_client`: the dsync CLI, where the console script is not on PATH."""

from .cli import main

raise SystemExit(main())
