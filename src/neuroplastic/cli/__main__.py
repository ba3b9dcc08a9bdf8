from neuroplastic.cli.commands import main

raise SystemExit(main())
