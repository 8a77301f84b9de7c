"""Ansible-format inventories (YAML and INI) and SSH deployments of mesh-agent."""
