from composer.testproduct import main

raise SystemExit(main())
