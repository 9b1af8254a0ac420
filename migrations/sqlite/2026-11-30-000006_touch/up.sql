-- A conversation sorts by its last user message: the database marks it
-- active as the message is inserted, in the same statement, instead of the
-- host sending a second one for every turn.
CREATE TRIGGER messages_touch_conversation AFTER INSERT ON messages
    WHEN new.role = 'user'
BEGIN
    UPDATE conversations SET updated_at = new.created_at WHERE id = new.conversation_id;
END;
