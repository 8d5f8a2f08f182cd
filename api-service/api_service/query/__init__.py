"""The query pipeline: SQL guard -> worker pool -> encodings -> result cache,
behind one QueryService. Everything here assumes auth has already passed."""
