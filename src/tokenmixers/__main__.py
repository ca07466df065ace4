from tokenmixers.cli import main

raise SystemExit(main())
