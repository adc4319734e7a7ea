from medfusion.cli import console

console()
