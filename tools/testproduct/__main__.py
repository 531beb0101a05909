from testproduct import main

raise SystemExit(main())
