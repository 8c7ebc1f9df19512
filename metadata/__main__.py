from metadata.service import build
from notifymesh import server

server.main("metadata", build)
