"""python -m mobilenet_train.report: the same as mobilenet-report."""

from ..cli.report import main

main()
