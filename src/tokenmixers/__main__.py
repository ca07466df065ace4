"""``python -m tokenmixers``: the same entry as the ``tokenmixers`` command."""

from tokenmixers_launch import main

raise SystemExit(main())
