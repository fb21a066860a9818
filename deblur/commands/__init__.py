"""The command groups of `deblur`, each registering its parsers (add_parsers) and handlers
(COMMANDS: name -> function of the parsed arguments); deblur/cli.py parses, dispatches and
turns errors into one line. The groups live here, in the CLI layer, because train, evaluate,
predict and run-local read the pipeline config (pipelines/), a layer above the libraries they
call; metrics/ and components/registry/ keep their own argument definitions, which the groups
here mount."""
from deblur.commands import data, evaluate, models, run, train

GROUPS = (data, train, evaluate, models, run)
