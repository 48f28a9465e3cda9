"""``python -m sail_compiler`` is the ``sail`` command."""

from .cli import main

raise SystemExit(main())
