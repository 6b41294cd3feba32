from dragonfork.cli import main

raise SystemExit(main())
