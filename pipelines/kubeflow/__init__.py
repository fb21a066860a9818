"""The Kubeflow Pipelines runner: compiling create_pipeline(config) to a KFP v2 package
(runner.py), where components run (placement.py, the only orchestrator-specific placement),
the `kubeflow` config section (config.py), the container entry point of every task
(entrypoint.py), the run's first tasks (check.py, fingerprint.py) and the `deblur compile`,
`submit`, `pipeline`, `schedule` commands (cli.py)."""
