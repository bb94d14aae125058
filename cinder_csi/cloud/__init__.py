"""Everything that talks to OpenStack. Nothing outside this package imports openstacksdk."""
