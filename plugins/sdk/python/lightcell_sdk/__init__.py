"""lightcell_sdk: write Lightcell http-filter plugins in Python (componentize-py).

    from lightcell_sdk import Continue, Filter, Headers, Modify, Respond, serve

    class AddHeader(Filter):
        def on_response_headers(self, headers, attributes, end_of_stream):
            return Modify(set={"x-filtered": "yes"})

    WitWorld = serve(AddHeader)   # what componentize-py looks for

The phases the plugin wants are the hooks its class overrides (here only
response-headers); every other hook is never called. Capabilities (log,
clock, kv, ...) are in `lightcell_sdk.host`. Build with the bindings and this
package on componentize-py's path (plugins/build.py does):

    componentize-py -d plugins/wit -w http-filter bindings BINDINGS
    componentize-py -d plugins/wit -w http-filter componentize app \
        -p APP_DIR -p BINDINGS -p plugins/sdk/python -o app.wasm
"""

from lightcell_sdk._filter import Filter
from lightcell_sdk._types import Continue, Decision, HeaderPairs, Headers, HeaderValue, Modify, Respond
from lightcell_sdk._world import serve

__all__ = [
    "Continue", "Decision", "Filter", "HeaderPairs", "HeaderValue", "Headers", "Modify", "Respond", "serve",
]
