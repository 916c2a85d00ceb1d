"""Plug-ins written exactly as README's "Extending" tells a user to: each one Python file here plus one YAML file
under conf/, loaded by train.py through hydra.searchpath. No file of the project changes for them."""
