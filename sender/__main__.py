from notifymesh import server
from sender.service import build

server.main("sender", build)
