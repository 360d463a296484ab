from ams.cli import run

run()
