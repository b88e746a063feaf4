from flashbench.cli import app

app()
