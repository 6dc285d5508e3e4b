"""Agora's analysis: policy diversity, niche and market metrics, dashboards (issue 4)."""
