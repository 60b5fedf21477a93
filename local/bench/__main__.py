import sys

from local.bench.run import main

sys.exit(main())
