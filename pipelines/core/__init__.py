"""Pure definitions every layer shares: the spec, run parameters, settings, errors, the table of
steps, the step pod. No service is reached from here."""
