"""The ``lodit`` subcommands, one module each: argument parsing over library functions.

Every module here has ``add_arguments(parser)`` and ``run(args) -> int | None``. ``run`` turns the
parsed flags into a call of the library function that does the work (``train_dit``,
:func:`lodit.dit.prompts.sample_to_folder`, :func:`lodit.eval.compare.compare`, ...) and prints
the one-line summary; the work itself, and everything the experiment runner, the demo and users
call, lives in the library packages. Nothing in the library imports this package: it sits at the
top of the dependency order, under only :mod:`lodit.cli`, which maps command names to these modules.
"""
