"""`python -m ettin_cli ...`, the form torchrun launches: `torchrun --nproc_per_node 8 -m ettin_cli score ...`."""

from ettin_cli.cli import main

if __name__ == "__main__":
    main()
