from lumi.cli import main

raise SystemExit(main())
