"""The commands wing: ``dcls-zoo`` and its subcommands.

- :mod:`.main`: the entry point and the registry of commands (imports nothing heavy);
- :mod:`.arguments`: the options of the project's own commands (argparse only);
- :mod:`.train`: Lightning's ``fit``/``validate``/``test``/``predict`` (:class:`~.train.DclsCLI`),
  with the start-up checks and the run-folder rules;
- :mod:`.after_fit`: the job after ``fit`` (test the best checkpoint, export it, the summary);
- :mod:`.export`, :mod:`.push`, :mod:`.convert`, :mod:`.benchmark`: the project's commands.
"""
