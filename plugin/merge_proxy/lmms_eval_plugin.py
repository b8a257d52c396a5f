"""lmms-eval's entry point for ``--model merge_proxy`` (group ``lmms_eval.models``).

lmms-eval loads this while ``lmms_eval.models`` is still initialising, and one failing entry point
silently stops later plugins from registering: so this module imports only the manifest type, never
torch or the model module itself (lmms-eval imports that by class path when the model is used).
"""

from __future__ import annotations


def manifests():
    """The manifest lmms-eval registers: a simple and a chat class for one model id."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(
            model_id="merge_proxy",
            simple_class_path="merge_proxy.lmms_model.MergeProxy",
            chat_class_path="merge_proxy.lmms_model.MergeProxyChat",
        )
    ]
