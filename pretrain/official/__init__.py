"""The papers' released checkpoints: conversion to this project's export format and back.

    from pretrain.official.convert import convert_official, export_official
    convert_official("protxlstm", "protxlstm_26m/", "exports/prot-26m")       # official -> ours
    export_official("exports/prot-26m", "official/prot-26m", "protxlstm")     # ours -> official

Families: protxlstm (ml-jku/Prot-xLSTM), dnaxlstm (ml-jku/DNA-xLSTM), chemxlstm
(ml-jku/Chem-xLSTM). Key names: keys.py (one table, both directions); config keys: one module
per family.
"""
