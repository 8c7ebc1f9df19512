from frontend.service import build
from notifymesh import server

server.main("frontend", build)
