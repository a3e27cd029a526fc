"""python -m train --model=NAME [flags]: trains any registered model (`--model=avae --help` lists its flags)."""

from train import cli

if __name__ == "__main__":
    cli.main()
