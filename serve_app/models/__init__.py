"""The API's answers as pydantic models, one module per resource, for the OpenAPI document.

They describe exactly the JSON the routes answer today (`comfy_fleet.views`, the routes'
own dicts); fields are added, never renamed. Routes keep returning their prebuilt JSON (a
`Response` is sent as it is), so the models cost nothing per request: they are the document.
`errors` holds the one error shape and the per-route error answers; `document` finishes the
document (bearer scheme, the error shape for 422, the event stream).
"""
