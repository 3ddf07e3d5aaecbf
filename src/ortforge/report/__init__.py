"""Self-contained reports (HTML, SVG plots) drawn from result objects; no CDN, no plotting dependency."""
