"""The sharing API: who may see which patient's history and which federated dataset."""
