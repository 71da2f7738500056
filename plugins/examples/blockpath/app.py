"""blockpath: answers 403 for paths under /admin/, tags every other request."""

from lightcell_sdk import Filter, Modify, Respond, serve


class BlockPath(Filter):
    def on_request_headers(self, headers, attributes, end_of_stream):
        path = attributes.get("request.path", headers.text(":path"))
        if path.startswith("/admin/"):
            return Respond(403, {"content-type": "text/plain"}, f"{path} is blocked\n")
        return Modify(set={"x-checked-by": "blockpath"}, remove=["x-debug"])


WitWorld = serve(BlockPath)
