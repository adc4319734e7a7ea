from medfusion.cli import main

main()
