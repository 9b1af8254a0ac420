-- A conversation sorts by its last user message: the database marks it
-- active as the message is inserted, in the same statement, instead of the
-- host sending a second one for every turn.
CREATE FUNCTION messages_touch_conversation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.role = 'user')
    EXECUTE FUNCTION messages_touch_conversation();
