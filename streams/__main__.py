"""``python -m streams`` is the ``livepulse`` command."""

from .cli import main

raise SystemExit(main())
