"""TemplateService: provider templates (Vast.ai) for `template_hash_id` (seed 004 /api/v1/templates*).

Without a template provider configured both RPCs answer FAILED_PRECONDITION (REST 400) "no template
provider configured (vastai)": the request is fine, the deployment cannot serve it (the reference said 500).
"""
from __future__ import annotations

from gantry.broker.v1 import templates_pb2, templates_pb2_grpc

from ..errors import InvalidArgument
from ..providers.base import ProviderTemplate
from ..runtime import Runtime
from .inventory import inventory_of, timestamp


def template_pb(t: ProviderTemplate) -> templates_pb2.Template:
    msg = templates_pb2.Template(
        id=t.id, hash_id=t.hash_id, name=t.name, image=t.image, tag=t.tag, env=t.env, onstart=t.onstart,
        runtype=t.runtype, use_ssh=t.use_ssh, ssh_direct=t.ssh_direct, recommended=t.recommended,
        recommended_disk_space=t.recommended_disk_space, extra_filters=t.extra_filters, creator_id=t.creator_id,
        count_created=t.count_created)
    if t.created_at is not None:
        msg.created_at.CopyFrom(timestamp(t.created_at))
    return msg


class TemplateService(templates_pb2_grpc.TemplateServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def ListTemplates(self, request, context):
        """name/image: case-insensitive substrings; recommended/use_ssh: exact when given."""
        name, image = request.name.strip().lower(), request.image.strip().lower()
        recommended = request.recommended if request.HasField("recommended") else None
        use_ssh = request.use_ssh if request.HasField("use_ssh") else None
        found = [t for t in await inventory_of(self.rt).templates.list()
                 if (not name or name in t.name.lower()) and (not image or image in t.image.lower())
                 and (recommended is None or t.recommended == recommended)
                 and (use_ssh is None or t.use_ssh == use_ssh)]
        return templates_pb2.ListTemplatesResponse(templates=[template_pb(t) for t in found], count=len(found))

    async def GetTemplate(self, request, context):
        hash_id = request.hash_id.strip()
        if not hash_id:
            raise InvalidArgument.field("hash_id", "is required")
        return templates_pb2.GetTemplateResponse(template=template_pb(await inventory_of(self.rt).template(hash_id)))
