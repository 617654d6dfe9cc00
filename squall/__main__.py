import sys

from squall.stack import main

sys.exit(main())
