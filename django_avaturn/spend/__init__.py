"""Spend control: the kill switch, the caps, the minutes quotas, and the usage they count."""
