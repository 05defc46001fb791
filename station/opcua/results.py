"""A ledger row as the standard's result: ``ResultDataType`` and the fields of the ResultReady event."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from asyncua import ua

from station.rejectlog import decode_labels

#: ResultState values (the standard leaves their meaning to the vision system): one per ledger verdict
RESULT_STATES = {"PASS": 1, "FAIL": 2, "NOT_INSPECTED": 3, "GAP": 4}
_EO = ua.VariantType.ExtensionObject
#: ResultReady's fields and their types (the NodeSet's properties carry no value asyncua could take them from)
RESULT_FIELDS = {"ResultId": ua.VariantType.String, "IsPartial": ua.VariantType.Boolean,
                 "IsSimulated": ua.VariantType.Boolean, "ResultState": ua.VariantType.Int32, "MeasId": _EO,
                 "PartId": _EO, "ExternalRecipeId": _EO, "InternalRecipeId": _EO, "ProductId": _EO,
                 "InternalConfigurationId": _EO, "JobId": ua.VariantType.String,
                 "CreationTime": ua.VariantType.DateTime, "ProcessingTimes": _EO,
                 "ResultContent": ua.VariantType.Variant}


def result_record(row: dict, inspect_ms: float | None) -> Any:
    """The ``ResultDataType`` of a ledger row (as stored, ``id`` included); ``inspect_ms``: the inspector's own time,
    when known. The part's ids are the row's: ``JobId`` its ``job_id`` (empty: no job asked for the part), ``MeasId``
    its ``meas_id`` (else the frame id), ``PartId`` its ``part_id`` (else the file, else ``frame N``), ``ProductId``
    its ``product_id`` (else the recipe's product). ``ResultContent`` is ``[verdict, defect count, defect classes,
    reason]``."""
    created = datetime.strptime(row["time_utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    latency = float(row.get("latency_ms") or 0.0)
    labels = [d.get("label", "defect") for d in json.loads(row.get("defects_json") or "[]")]
    classes = sorted(set(labels) | set(decode_labels(row.get("labels_json") or "[]")[0]))
    product, _, fingerprint = (row.get("recipe") or "").partition(" ")
    part = row.get("part_id") or row.get("file") or f"frame {row['frame_id']}"
    content = [ua.Variant(row["verdict"], ua.VariantType.String),
               ua.Variant(len(labels), ua.VariantType.Int32),
               ua.Variant(classes, ua.VariantType.String),
               ua.Variant(row.get("reason") or "", ua.VariantType.String)]
    return ua.ResultDataType(
        ResultId=ua.ResultIdDataType(Id=str(row["id"])), IsPartial=False, IsSimulated=str(row.get("source", "")).startswith("replay:"),
        ResultState=RESULT_STATES.get(row["verdict"], 0),
        MeasId=ua.MeasIdDataType(Id=str(row.get("meas_id") or row["frame_id"])),
        PartId=ua.PartIdDataType(Id=part), ExternalRecipeId=ua.RecipeIdExternalDataType(Id=product or "-"),
        InternalRecipeId=ua.RecipeIdInternalDataType(Id=product or "-", Version=fingerprint or None),
        ProductId=ua.ProductIdDataType(Id=row.get("product_id") or product or "-"),
        InternalConfigurationId=ua.ConfigurationIdDataType(Id=str(row.get("engine_id") or "-")),
        JobId=ua.JobIdDataType(Id=str(row.get("job_id") or "")), CreationTime=created,
        ProcessingTimes=ua.ProcessingTimesDataType(
            StartTime=created - timedelta(milliseconds=latency), EndTime=created,
            ProcessingDuration=float(inspect_ms if inspect_ms is not None else latency)),
        ResultContent=content)


async def inherit_struct_definitions(server: Any, namespace: int) -> list[str]:
    """Give each structure DataType of ``namespace`` that has no DataTypeDefinition its parent's (own encoding, own
    base type). The 2019 NodeSet leaves them out for RecipeIdExternalDataType and its siblings, which inherit the
    fields of BinaryIdBaseDataType; clients that build the structures from the server (asyncua's
    ``load_data_type_definitions``, and others) cannot encode them without one. Returns the names completed."""
    from asyncua.server.address_space import AttributeValue

    done = []
    nodes = server.iserver.aspace._nodes  # the server's own address space: the attribute is not writable by clients
    for nodeid, data in list(nodes.items()):
        attrs = data.attributes
        if nodeid.NamespaceIndex != namespace or attrs[ua.AttributeIds.NodeClass].value.Value.Value != \
                ua.NodeClass.DataType:
            continue
        own = attrs.get(ua.AttributeIds.DataTypeDefinition)
        if own is not None and own.value.Value.Value is not None:
            continue
        node = server.get_node(nodeid)
        parents = await node.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse)
        inherited = nodes[parents[0].nodeid].attributes.get(ua.AttributeIds.DataTypeDefinition) if parents else None
        definition = inherited.value.Value.Value if inherited is not None else None
        if not isinstance(definition, ua.StructureDefinition):
            continue
        encodings = [e for e in await node.get_referenced_nodes(ua.ObjectIds.HasEncoding, ua.BrowseDirection.Forward)
                     if (await e.read_browse_name()).Name == "Default Binary"]
        if not encodings:
            continue
        definition = copy.deepcopy(definition)
        definition.DefaultEncodingId, definition.BaseDataType = encodings[0].nodeid, parents[0].nodeid
        attrs[ua.AttributeIds.DataTypeDefinition] = AttributeValue(ua.DataValue(ua.Variant(definition)))
        done.append((await node.read_browse_name()).Name)
    return done
