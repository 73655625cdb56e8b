from hostos.cli import main

raise SystemExit(main())
