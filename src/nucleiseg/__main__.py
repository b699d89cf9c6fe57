from nucleiseg.cli import main

raise SystemExit(main())
