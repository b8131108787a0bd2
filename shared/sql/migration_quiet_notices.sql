SET LOCAL client_min_messages = warning
