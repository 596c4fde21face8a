"""Versioned pyarrow schemas of the catalogue and every manifest, and how they are stored."""
