from speedy.cli import app

app()
