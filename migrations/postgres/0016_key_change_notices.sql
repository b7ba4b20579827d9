-- Every replica keeps a cache of verified API keys. Any write to `api_keys` (a key
-- created, revoked, or edited by hand) notifies `maestro_key_changes` when it commits,
-- whoever made it (a replica, the CLI, psql); each replica's listener then drops its
-- cache, so a revocation takes effect everywhere as soon as the notice arrives.
CREATE FUNCTION api_keys_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('maestro_key_changes', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_notify_change AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys_notify_change();
