from skyjobs.cli import run

run()
